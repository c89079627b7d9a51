"""A real RTSP server for the live-input tests: GStreamer's gst-rtsp-server (Debian
``gir1.2-gst-rtsp-server-1.0``, ``python3-gi``), run with the system Python 3 (``/usr/bin/python3``).

``gst_rtsp_server.py RTSP_PORT RTP_PORT`` serves ``rtsp://127.0.0.1:RTSP_PORT/live``: the H.264 that a
sender sends as RTP (RFC 6184, payload type 96) to ``127.0.0.1:RTP_PORT`` — in the tests the ffmpeg
CLI (``ffmpeg -re -i clip -c:v libx264 -x264-params repeat-headers=1 -f rtp rtp://127.0.0.1:RTP_PORT``:
the parameter sets must come in-band, FFmpeg's RTP muxer otherwise puts them only in its SDP) —
re-packetised and shared by every client, over RTP/TCP or RTP/UDP as the client asks. Prints
``ready`` once it listens; runs until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

port, rtp_port = sys.argv[1], int(sys.argv[2])
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f'( udpsrc address=127.0.0.1 port={rtp_port} '
                   f'caps="application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000" '
                   f'! rtph264depay ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )')
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
