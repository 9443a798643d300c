"""Operations: /healthz and its policy, /metrics, logs, and what is never shown (passwords)."""
