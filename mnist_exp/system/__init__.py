"""The bottom layer: what every other package may use and that uses none of them: error reports, passwords kept out
of output, signals, child processes, sockets, memory limits, the Keras backend's import, and the workarounds of other
libraries' internals (workarounds.py, the only module that touches them)."""
