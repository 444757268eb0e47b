"""`chat-bench`: a load generator and report for the chat backend (issue 4)."""
