"""Process plumbing shared by the commands, and the all-in-one `chat-stack`."""
