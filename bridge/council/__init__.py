"""Councils: one holder per role, and the coordinator told the moment a council is whole
(DESIGN.md, "Councils"). The leader records each opportunity, arbitrates every claim, keeps
holders whose agents are gone from holding, and publishes each change as an event."""
