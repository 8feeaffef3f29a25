"""Pure domain logic: no I/O, no clock, no database. Everything here is a function of its inputs."""
