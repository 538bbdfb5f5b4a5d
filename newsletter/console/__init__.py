"""The editors' and admins' console: staff accounts, sessions, roles and the audit log,
served under `/admin/` by the web app."""
