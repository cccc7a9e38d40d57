"""Export to Hugging Face: the code scripts/export_hf.py runs (export.py) and the files it copies into
the exported folder (configuration_nanochat.py, modeling_nanochat.py, chat_template.jinja)."""
