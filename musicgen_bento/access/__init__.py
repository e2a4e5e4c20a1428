"""Who may use the service, and how much: API keys (`keys`) and what each key uses against its
limits (`usage`)."""
