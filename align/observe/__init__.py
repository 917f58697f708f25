"""Watching a run as it trains: metrics.jsonl and W&B (`tracking`), health alerts (`health`), curves as PNG
(`plots`), the progress bar (`progress`) and replies sampled while training (`samples`)."""
