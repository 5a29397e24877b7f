"""The contracts every part of modelloop shares: custom resources, artifact layout, feedback."""
