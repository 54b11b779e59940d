"""Training: a session turns a config into a running Trainer and a finished run; everything the loop needs
(optimizer, distributed wrapping, background checkpoint writes, the run log, trackers, curves) lives here."""
