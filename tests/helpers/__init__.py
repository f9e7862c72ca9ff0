"""Builders the tests share: tiny models, a loopback hub, checkpoints, servers (no tests here)."""
