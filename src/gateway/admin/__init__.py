"""Managing money and keys, the same way through the admin API and the CLI: the operations with
their input rules (:mod:`~gateway.admin.operations`) and how records look in JSON
(:mod:`~gateway.admin.views`)."""
