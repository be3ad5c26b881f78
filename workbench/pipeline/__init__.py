"""The pipeline: recipe section -> engine -> run store; runs, sweeps, servers, launches."""
