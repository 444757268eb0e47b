"""The chat logic: workers that take client events and publish what they cause."""
