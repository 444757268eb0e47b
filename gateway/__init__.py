"""The gateway: a Trio TCP server that holds client connections and nothing else."""
