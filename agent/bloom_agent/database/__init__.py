"""Database safety: backups before migrations, the migrations, and undoing them on rollback."""
