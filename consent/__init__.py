"""Consent: policies, ledger, suppressions, the contactability rule, data subject requests."""
