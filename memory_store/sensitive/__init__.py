"""Desensitisation: sensitive values found in memory text are kept, masked, pseudonymised or rejected by the
tenant's policy before the text is embedded or encrypted (:mod:`.detector` finds them, :mod:`.policy` says
what to do, :mod:`.vault` keeps pseudonymised originals sealed under the subject's data key)."""
