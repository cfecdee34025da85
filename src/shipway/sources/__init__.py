"""sources feature: uploaded source archives, validated and stored."""
