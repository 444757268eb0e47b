"""The broker: balances client events over workers and forwards their replies."""
