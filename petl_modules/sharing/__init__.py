"""Sharing and serving trained models in other formats than the PETL model folder.

``peft_lora``   a LoRA model as a PEFT adapter (``adapter_config.json`` + safetensors) and back
``onnx_export`` a whole model (backbone, PETL modules, head, softmax) as one ONNX graph, checked
                with onnxruntime

The command lines are ``python -m petl_modules.export --format=peft|onnx`` and
``python -m petl_modules.from_peft``.
"""
