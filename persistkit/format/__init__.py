"""FORMAT: bytes in, bytes out. Nothing here touches files."""
