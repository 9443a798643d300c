"""Agents among themselves: the roster the bridge answers them (and coordinators) with."""
