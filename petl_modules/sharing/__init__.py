"""Sharing and serving trained models: other formats than the PETL model folder, the Hugging Face
Hub, several tasks on one backbone.

``peft_lora``    a LoRA model as a PEFT adapter (``adapter_config.json`` + safetensors) and back
``onnx_export``  a whole model (backbone, PETL modules, head, activation) as one ONNX graph,
                 checked with onnxruntime
``head``         the head and labels written beside an exported backbone
``hub``          Hub repo ids resolved to local snapshots (``snapshot_download``)
``model_card``   the model card ``python -m petl_modules.push`` uploads
``multitask``    the PETL models of several tasks on one frozen backbone

The command lines are ``python -m petl_modules.export --format=peft|onnx``,
``python -m petl_modules.from_peft``, ``python -m petl_modules.push`` and
``python -m petl_modules.classify --model A --model B -- FILES``.
"""
