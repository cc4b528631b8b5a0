"""Child processes: spawned, watched, signalled and reaped in process groups of their own."""
