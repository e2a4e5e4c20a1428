"""Generation: parameters (`params`), windows (`windows`), the codec (`codec`), the two decoding
backends (`backends`), the `Generator` protocol (`protocol`), the generator over them
(`generator`), the served model's life (`host`) and a stand-in generator for client development
(`mock`)."""
