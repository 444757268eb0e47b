"""The pure core of the chat backend: no sockets, no Trio, no ZeroMQ, no Redis.

Everything that crosses a boundary is defined here once: client lines
(`lines`), client commands (`commands`), the messages between processes
(`messages`) and their msgpack framing (`codec`), and the rendering of
events for clients (`render`).
"""
