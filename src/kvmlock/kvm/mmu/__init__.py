"""The x86 MMU of the model: SPTEs, shadow pages, fault paths, dirty logging."""
