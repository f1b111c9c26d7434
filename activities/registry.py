"""The delivery channels' handlers, one per channel."""

from typing import Any

from activities.channel_handler import ChannelHandler
from activities.email import EmailHandler
from activities.slack import SlackHandler
from domain import Channel

CHANNEL_HANDLERS: dict[Channel, type[ChannelHandler[Any, Any]]] = {h.channel: h for h in (EmailHandler, SlackHandler)}
