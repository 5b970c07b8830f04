"""The PETL methods: what is inserted into a frozen backbone and what trains (see the package docstring)."""
