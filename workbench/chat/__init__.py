"""Answering a chat: one greedy answer streamed token by token in a worker (task `chat.answer`)."""
