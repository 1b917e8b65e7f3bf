"""The MPI room: only job.py and channel.py make MPI calls. world.py checks the launch and the topology,
gather.py packs records for the gather, watchdog.py, recovery.py and progress.py watch and report."""
