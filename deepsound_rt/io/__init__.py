"""Video in, audio (or video with audio) out."""
from deepsound_rt.io.output import write_output
from deepsound_rt.io.sample import sample_clip_path
from deepsound_rt.io.video import VideoClip, VideoProbe, load_video, probe_video

__all__ = ["VideoClip", "VideoProbe", "load_video", "probe_video", "sample_clip_path", "write_output"]
