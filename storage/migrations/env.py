"""Alembic environment, driven only from code: `storage.db` hands over an open connection.

There is no alembic.ini and no URL here, so migrations run the same way on any database the service
is pointed at. To write a new revision, pass a connection the same way and call
`alembic.command.revision(config, autogenerate=True)`; then read and edit what it wrote.
"""

from alembic import context

from storage.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("perfguard migrations run from code: set config.attributes['connection']")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters tables by copying them; batch mode makes generated revisions do that.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
