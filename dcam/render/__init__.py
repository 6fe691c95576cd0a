"""Pictures of an explanation: overlays (:mod:`.overlay`) and contact sheets (:mod:`.sheet`)."""
from .overlay import (DISPLAY_MAX_SIDE, DISPLAY_MIN_SIDE, colorize, display_size, overlay, show_cam_on_image,
                      upsample_map)
from .sheet import SHEET_MAX_SIDE, colour_bar, contact_sheet, sheet_layout

__all__ = ["overlay", "show_cam_on_image", "upsample_map", "colorize", "display_size", "contact_sheet",
           "sheet_layout", "colour_bar", "DISPLAY_MIN_SIDE", "DISPLAY_MAX_SIDE", "SHEET_MAX_SIDE"]
