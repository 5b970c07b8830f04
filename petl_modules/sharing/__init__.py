"""Sharing trained models in other formats than the PETL model folder (the folder itself, the Hub
and several tasks on one backbone are the model layer's: ``petl_modules.model``).

``peft_lora``    a LoRA, DoRA, (IA)3 or VeRA model as a PEFT adapter (``adapter_config.json`` +
                 safetensors) and back: the format; ``peft_export`` and ``peft_import`` the two
                 ways
``onnx_export``  a whole model (backbone, PETL modules, head, activation) as one ONNX graph,
                 checked with onnxruntime
``head``         the head and labels written beside an exported backbone
``model_card``   the model card ``python -m petl_modules.push`` uploads

The command lines are ``python -m petl_modules.export --format=peft|onnx``,
``python -m petl_modules.from_peft`` and ``python -m petl_modules.push``.
"""
