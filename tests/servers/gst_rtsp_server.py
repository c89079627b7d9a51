"""A real RTSP server for the live-input tests: GStreamer's gst-rtsp-server (Debian
``gir1.2-gst-rtsp-server-1.0``, ``python3-gi``), run with the system Python 3 (``/usr/bin/python3``).

``gst_rtsp_server.py RTSP_PORT [WIDTHxHEIGHT]`` serves ``rtsp://127.0.0.1:RTSP_PORT/live``: a live
camera-like H.264 stream (``videotestsrc is-live=true`` → ``x264enc tune=zerolatency``, a keyframe
per second, 25 FPS) as RTP (RFC 6184), shared by every client, over RTP/TCP or RTP/UDP as the
client asks. Prints ``ready`` once it listens; runs until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

port = sys.argv[1]
w, h = (sys.argv[2] if len(sys.argv) > 2 else "320x240").split("x")
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate=25/1 "
                   f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 "
                   f"! rtph264pay name=pay0 pt=96 config-interval=-1 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
