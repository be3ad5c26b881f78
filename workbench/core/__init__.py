"""The foundation: records, the run store, recipes, files, names, devices."""
