//! PLACEHOLDER: the webhook destination is being written; `open` refuses until then.

/// The webhook destination.
pub struct Unbuilt;

impl super::Destination for Unbuilt {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send(
        &self,
        messages: Vec<super::Message>,
        _timeout: std::time::Duration,
    ) -> futures::future::BoxFuture<'static, Vec<Result<(), super::SendError>>> {
        let count = messages.len();
        Box::pin(async move { vec![Err(super::SendError::Refused("not built".to_owned())); count] })
    }
}

pub fn open(_url: &url::Url) -> Result<Unbuilt, String> {
    Err("the webhook destination is not built yet".to_owned())
}
