"""align: staged preference-alignment fine-tuning (SFT, reward model, DPO, PPO) on the Hugging Face stack.

Importing this package must stay cheap: no torch, transformers or trl at import time, so `align --help` is fast.
"""

__version__ = "0.1.0"
