"""VideoLLaMA2.1-7B-AV as DeepSound-V1 fine-tuned it: SigLIP + STC video path, BEATs audio path,
Qwen2 LLM, the multimodal splice, DeepSound's prompts and the plan / voice-over judges."""
