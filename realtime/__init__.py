"""The streaming engine, live audio, the WebSocket server and the demo."""
