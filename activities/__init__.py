"""The handlers: the notification handlers' steps (`notification`), the base of every delivery channel's handler
(`channel_handler`), one module per channel (`email`, `slack`) and their registry (`registry`), and the contract
workflow and client code know them by (`contract`)."""
