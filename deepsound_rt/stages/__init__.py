"""Pipeline stages: prepare inputs, call graphs through a backend, post-process. Backend-agnostic."""
