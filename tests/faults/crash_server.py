"""A model server that dies mid-load: runs the server command it is given, and once the server has answered
its first request (llama-server's `/metrics` counts a predicted token), kills it and itself with SIGSEGV — a
native crash, which the Python fault hook (sitecustomize.py) cannot reach."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

command = sys.argv[1:]
port = command[command.index("--port") + 1]
server = subprocess.Popen(command)
while server.poll() is None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as answer:
            counters = dict(line.split(" ", 1) for line in answer.read().decode().splitlines() if line[:1] != "#")
        if float(counters.get("llamacpp:tokens_predicted_total", "0")) > 0:
            server.send_signal(signal.SIGSEGV)
            server.wait()
            break
    except OSError:
        pass
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGSEGV)
