//! Python frames put into the native stack, where the interpreter's
//! evaluation function ran them: the flame graph then reads
//! `main -> ... -> _PyEval_EvalFrameDefault -> handle (app.py:4) ->
//! PyBytes_FromStringAndSize -> malloc`.

use crate::model::Frame;

/// The module of Python frames.
pub(crate) const PYTHON_MODULE: &str = "[python]";

/// The native function that runs Python frames.
const EVAL: &str = "_PyEval_EvalFrameDefault";

/// One Python frame read at an allocation, innermost first.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PyFrame {
    /// None for a frame shown nowhere (not started, or the C stack's marker).
    pub frame: Option<Frame>,
    /// True for the outermost frame of one call of the evaluation function.
    pub ends_call: bool,
}

/// `native` (innermost first) with each evaluation call's Python frames
/// just inside it (innermost first too); Python frames left over (the native
/// stack was cut short) go at the outer end.
pub(crate) fn merge(native: Vec<Frame>, python: Vec<PyFrame>) -> Vec<Frame> {
    let mut calls: Vec<Vec<Frame>> = vec![Vec::new()];
    for f in python {
        if let (Some(frame), Some(call)) = (f.frame, calls.last_mut()) {
            call.push(frame);
        }
        if f.ends_call {
            calls.push(Vec::new());
        }
    }
    calls.retain(|c| !c.is_empty());
    let mut calls = calls.into_iter();
    let mut out = Vec::with_capacity(native.len());
    for frame in native {
        let eval = !frame.inlined
            && frame
                .function
                .as_deref()
                .is_some_and(|f| f.starts_with(EVAL));
        if eval {
            if let Some(call) = calls.next() {
                out.extend(call);
            }
        }
        out.push(frame);
    }
    out.extend(calls.flatten());
    out
}

/// Folds away the native frames of the interpreter `interpreter` (the
/// executable or `libpython` it runs from) from a stack with Python frames,
/// for a Python-only view; frames of other objects (C extensions, the C
/// library) stay.
pub(crate) fn python_only(frames: &mut Vec<Frame>, interpreter: &str) {
    if !frames
        .iter()
        .any(|f| f.module.as_deref() == Some(PYTHON_MODULE))
    {
        return;
    }
    frames.retain(|f| f.module.as_deref() != Some(interpreter));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(name: &str) -> Frame {
        Frame {
            function: Some(name.to_string()),
            module: Some("/usr/bin/python3.11".to_string()),
            ..Frame::default()
        }
    }

    fn py(name: &str, line: u32, ends_call: bool) -> PyFrame {
        PyFrame {
            frame: Some(Frame {
                function: Some(name.to_string()),
                module: Some(PYTHON_MODULE.to_string()),
                file: Some("app.py".to_string()),
                line: Some(line),
                ..Frame::default()
            }),
            ends_call,
        }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames
            .iter()
            .map(|f| f.function.as_deref().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn each_evaluation_call_gets_its_python_frames() {
        let stack = vec![
            native("malloc"),
            native("PyBytes_FromStringAndSize"),
            native(EVAL),
            native("PyObject_Call"),
            native(EVAL),
            native("main"),
        ];
        let python = vec![
            py("handle", 4, false),
            py("serve", 9, true),
            PyFrame {
                frame: None,
                ends_call: false,
            },
            py("<module>", 12, true),
        ];
        let merged = merge(stack, python);
        assert_eq!(
            names(&merged),
            [
                "malloc",
                "PyBytes_FromStringAndSize",
                "handle",
                "serve",
                EVAL,
                "PyObject_Call",
                "<module>",
                EVAL,
                "main"
            ]
        );
        let mut folded = merged;
        python_only(&mut folded, "/usr/bin/python3.11");
        assert_eq!(names(&folded), ["handle", "serve", "<module>"]);
    }

    #[test]
    fn frames_without_an_evaluation_call_go_outermost() {
        let merged = merge(
            vec![native("malloc"), native("f")],
            vec![py("handle", 4, true)],
        );
        assert_eq!(names(&merged), ["malloc", "f", "handle"]);
        let plain = vec![native("malloc"), native(EVAL)];
        assert_eq!(merge(plain.clone(), Vec::new()), plain);
    }

    #[test]
    fn native_stacks_without_python_frames_are_not_folded() {
        let mut frames = vec![native("malloc"), native("main")];
        python_only(&mut frames, "/usr/bin/python3.11");
        assert_eq!(names(&frames), ["malloc", "main"]);
    }
}
