"""Use a trained model: `align chat` (use/chat.py) talks to it, `align export` (use/export.py) writes it as a merged
Hugging Face checkpoint or a GGUF file, checked against its source (use/verify.py). Importing the package stays
torch-free."""

from align.use.config import ChatConfig, ExportConfig

__all__ = ["ChatConfig", "ExportConfig"]
