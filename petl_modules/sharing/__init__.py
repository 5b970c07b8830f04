"""Sharing trained models: export formats, the Hugging Face Hub, several tasks on one backbone."""
