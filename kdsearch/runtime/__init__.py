"""What a run meets outside its own code: the device and threads, Ctrl-C, object storage, the versions that reproduce it."""
