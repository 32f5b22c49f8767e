"""Customer data platform core: profiles, identities, encryption, events, segments."""
