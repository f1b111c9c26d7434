"""The handlers: the notification handlers' steps (`notification`), one handler per delivery channel (`channels`),
and the contract workflow and client code know them by (`contract`)."""
