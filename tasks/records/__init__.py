"""What flows between the steps: typed records (``schema``) and the errors a user can fix
(``errors``)."""
